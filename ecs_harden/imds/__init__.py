"""The IMDS block: what it is, where it goes, and the checks that keep it effective."""
