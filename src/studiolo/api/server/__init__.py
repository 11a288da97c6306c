"""studiolo's own routes: health, the log stream and memory."""
