"""Images: labelled image files from a folder of class subfolders or a manifest, to a trained and served model.

``manifest``: the table of files a run trains on (path, label, digest, size, channels), checked file by file;
``generate``: the bundled example (scikit-learn's digits as PNG files) and a generator of synthetic shapes.
"""
