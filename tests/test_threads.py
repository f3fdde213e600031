"""The tools' default thread count: never every core of a shared machine."""

from halviz.threads import default_threads


def test_the_default_is_half_the_cores_unless_omp_says_otherwise():
    assert default_threads({}, cores=2) == 1 and default_threads({}, cores=1) == 1
    assert default_threads({}, cores=16) == 8 and default_threads({}, cores=64) == 8
    assert default_threads({"OMP_NUM_THREADS": "3"}, cores=2) == 3
    assert default_threads({"OMP_NUM_THREADS": "junk"}, cores=8) == 4
    assert default_threads({"OMP_NUM_THREADS": "0"}, cores=8) == 4
