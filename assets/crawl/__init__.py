"""Reading a crawl: its shards (reader.py), checking and decoding images (images.py, in a
child process with a time budget: image_worker.py) and turning them into model input
(pixels.py)."""
