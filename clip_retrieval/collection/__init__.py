"""A user's collection: captions CSV files, image folders, and decoding an image file safely.

``dataset`` reads and validates collections and query files and decodes images (the one
pixel limit, EXIF orientation, colour modes); ``generated`` draws the demo and test
pictures from a seed. Nothing here encodes or searches.
"""
