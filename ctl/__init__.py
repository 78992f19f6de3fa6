"""trainctl: feed and steer the trainer daemon through the on-disk queue (never imports torch)."""
