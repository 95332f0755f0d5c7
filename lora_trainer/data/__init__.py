"""Training data: scanning folders, captions, images, buckets, caches and the dataset report."""
