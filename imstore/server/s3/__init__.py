"""S3 on its own port (`serve --s3-port`): path-style S3 over the store, a bucket being a key's first segment.

The gateway side (front.py) checks the signature and the scope and forwards the request to a
worker with the caller's verified context in an internal header; the worker side (handlers.py)
answers it through the Store API. sigv4.py, chunked.py, digests.py and xml.py are pure helpers.
"""
