"""Networks shared by agents and policies."""
