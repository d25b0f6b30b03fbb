"""webclip crawl package."""
