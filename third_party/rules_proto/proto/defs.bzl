"""Bazel 4's native proto rules under the names @rules_proto//proto:defs.bzl exports.

Only @bazel_tools loads these; nestad_tf has no protos.
"""

load(":providers.bzl", "BUILTIN_PROTO_INFO")

ProtoInfo = BUILTIN_PROTO_INFO
proto_lang_toolchain = native.proto_lang_toolchain
proto_library = native.proto_library
