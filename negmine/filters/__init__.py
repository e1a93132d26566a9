"""False-negative filters. Each method lives in its own module named after it."""
