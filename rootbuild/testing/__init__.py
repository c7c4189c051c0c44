"""Fakes of rootbuild's side-effect seams, for tests of the engine without a kernel, FUSE or
a network (as ``trio.testing`` ships with trio). See ``rootbuild.testing.fakes``."""
