"""Bazel's built-in ProtoInfo under another name (defs.bzl re-exports it as ProtoInfo)."""

BUILTIN_PROTO_INFO = ProtoInfo
