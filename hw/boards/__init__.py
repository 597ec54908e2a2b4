"""Board pin profiles (TOML), selected by gpio.board."""
