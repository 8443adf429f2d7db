"""The pipeline layer the nodes call: one entry point per backbone family that assembles the papers'
modules (loading, conditioning, sampling, decoding). Host-independent like the rest of `models/`."""
