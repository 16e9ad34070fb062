"""Fixtures of other test modules that tests here use too."""

from tests.test_mail import inbox  # noqa: F401  (an SMTP server that keeps what it receives)
