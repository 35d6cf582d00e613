"""The sample crawl: a synthetic img2dataset crawl with planted defects and ground truth
(sample_crawl.py), drawn from the scene and caption generator in synthetic.py."""
