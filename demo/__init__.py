"""The end-to-end demo: a generated mini-web on loopback, run through every webclip stage."""
