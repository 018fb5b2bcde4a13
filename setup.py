"""The one compiled part: multi-buffer MD5 for S3 part ETags (imstore/_md5lanes.c). Optional: without a C
compiler the install goes on and imstore/md5lanes.py uses hashlib, which is slower only when parts arrive at once."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("imstore._md5lanes", ["imstore/_md5lanes.c"], extra_compile_args=["-O2"], optional=True)])
