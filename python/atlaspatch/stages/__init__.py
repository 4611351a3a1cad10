"""The four stages: segment, tile, embed-patches, embed-slide. Each is shared by the CLI, the in-process
pipeline and the Nextflow processes."""
