"""Reports read from finished runs' files, offline: no training, no Composer."""
