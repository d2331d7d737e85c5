"""Image clustering: k-means with model selection (``kmeans``), and the ``enclip cluster`` command (``catalogue``)."""
