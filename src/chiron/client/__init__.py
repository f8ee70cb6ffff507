"""Owner and provider tools: the `chiron` command line and its client SDK."""
