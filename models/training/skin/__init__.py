"""The skin-lesion exam's training: HAM10000 dermoscopy, seven classes, trained from scratch here."""
