"""The demo (`memorization-index demo`, run.py) and its example cohort made from real MRI
(cohort.py), also used by the tests and benchmarks."""
