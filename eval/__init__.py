"""webclip eval package."""
