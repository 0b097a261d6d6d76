"""The HTML report of a run or of a clustered folder: curves, embedding map, galleries, confusion matrix, sizes, metrics.

``content.py`` gathers what a report shows, ``projection.py`` maps
embeddings to 2-D, ``plots.py`` draws the figures, ``gallery.py`` picks and
encodes the example images, ``html.py`` writes the page, and ``write.py``
puts the page and its PNGs on disk.
"""
