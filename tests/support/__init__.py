"""Helpers shared by the tests (not tests themselves): bundles, sshd, test doubles, paths."""
