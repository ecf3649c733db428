"""Boot persistence: merging the block into the files each flavor restores at boot."""
