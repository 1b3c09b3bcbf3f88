"""``ultraseg serve MODEL``: a local live viewer in the browser (:mod:`ultraseg.viewer.server`, page in static/)."""
