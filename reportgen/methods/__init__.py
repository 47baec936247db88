"""The science as plain functions on tensors: batch in, batch out; no files, no HTML."""
