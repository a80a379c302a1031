"""Reports: the four output files (files.py), the HTML page (html.py), PNG images (images.py)."""
