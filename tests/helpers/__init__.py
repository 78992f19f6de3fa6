"""What the tests share: helpers, fakes and the scripts they run as processes."""
