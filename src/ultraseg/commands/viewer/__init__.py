"""``ultraseg serve MODEL``: a local live viewer in the browser (:mod:`ultraseg.commands.viewer.server`, page in
static/)."""
