"""webclip train package."""
