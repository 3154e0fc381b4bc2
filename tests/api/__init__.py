import pytest

# The shared assertion helpers report their operands like test code does.
pytest.register_assert_rewrite("tests.api.support")
