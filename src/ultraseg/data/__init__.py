"""Reading, filtering, splitting and augmenting the BUSI images and masks."""
