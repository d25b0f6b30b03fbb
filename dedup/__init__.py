"""webclip dedup package."""
