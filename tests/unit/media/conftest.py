"""Shared fixtures for the media tests: speech made at test time by espeak-ng."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SENTENCES = [
    "Please wait at the gate while I come down to let you in.",
    "The parcel for flat seven can go in the box beside the stairs.",
    "Could you tell me which number you are trying to reach today?",
    "We will be home again around six, so leave it with the neighbour.",
    "Press the green button once and speak slowly into the grille.",
    "The lift is broken, so the stairs are on your left after the door.",
    "It is raining hard, please step under the roof while you wait.",
    "Thank you, the courier will come back on Monday morning at nine.",
    "One, two, three, four, five, six, seven, eight, nine, zero, star, hash.",
]


def speak(folder: Path, name: str, text: str, voice: str, rate: int) -> Path:
    """espeak-ng at its own rate, then sox to `rate`: a mono 16-bit WAV."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are needed")
    raw = folder / f"{name}.raw.wav"
    out = folder / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", str(rate), str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def speech_minute(tmp_path_factory) -> dict[int, Path]:
    """About a minute of speech (two voices) at 8 and 16 kHz."""
    folder = tmp_path_factory.mktemp("speech")
    text = " ".join(SENTENCES)
    parts = {}
    for rate in (8000, 16000):
        files = [speak(folder, f"{v}_{rate}", text, v, rate) for v in ("en+m3", "en+f3")]
        out = folder / f"minute_{rate}.wav"
        subprocess.run(["sox", *map(str, files), str(out)], check=True)
        parts[rate] = out
    return parts


@pytest.fixture(scope="session")
def speech_short(tmp_path_factory) -> dict[int, Path]:
    """About 8 s of speech at 8 and 16 kHz."""
    folder = tmp_path_factory.mktemp("short")
    text = " ".join(SENTENCES[:2])
    return {rate: speak(folder, f"short_{rate}", text, "en+m3", rate) for rate in (8000, 16000)}
