"""Sans-IO SIP for porch: bytes and objects in, bytes and objects out; no sockets or clocks.

- `message`: parse datagrams and TCP streams, typed header access, serialise, answer.
- `headers`, `uri`: header values (Via, addresses, CSeq, MIME types) and SIP/SIPS/tel URIs.
- `auth`: digest authentication, client and server (RFC 7616, RFC 8760).
- `sdp`: SDP and the offer/answer model for the audio stream.
- `errors`: RemoteProtocolError (bad input, with the status to answer) and friends.

Transactions, dialogs, registration and the user agent build on these modules.
"""
