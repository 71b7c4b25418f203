"""The Discord bot: `!dream` and `/dream`, Midjourney-style, as a client of the engine."""
