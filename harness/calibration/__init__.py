"""A/A calibration: measure the target's own noise, then judge outputs against it
(docs/design.md, "Comparing two generations")."""
