"""The Spark-free core: what one image or one list of images needs, on any machine.

Images (reading from folders and object storage, decoding, rejects), perceptual hashes, the
backbones and their duplicate descriptors, thumbnails, storage locations, shops' product feeds
(Google Merchant Center, Shopify) read into the raw catalog table. Nothing here imports
PySpark (``tests/core/test_core.py`` proves it): evaluation, fine-tuning and a GPU box use the core
alone, and the Spark stages call it inside their UDFs.
"""
