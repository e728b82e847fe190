"""The wire and file contract: generated protobuf and gRPC code for casefile.v1.

Regenerate with ``python -m protos.generate`` after editing a ``.proto`` file.
"""
