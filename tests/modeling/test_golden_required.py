"""Without the reference bundle the parity tests skip locally and fail in CI."""

import os
import unittest
from unittest import mock

from ..helpers import golden


class TestRequireGolden(unittest.TestCase):
    def test_missing_bundle_skips_or_fails(self):
        missing = os.path.join(golden.GOLDEN_DIR, "no-such-file.pth")
        with mock.patch.object(golden, "WEIGHTS", missing):
            with mock.patch.dict(os.environ, {"DETA_REQUIRE_GOLDEN": ""}):
                with self.assertRaisesRegex(unittest.SkipTest, "no-such-file"):
                    golden.require_golden(self)
            with mock.patch.dict(os.environ, {"DETA_REQUIRE_GOLDEN": "1"}):
                with self.assertRaisesRegex(AssertionError, "no-such-file.*required"):
                    golden.require_golden(self)


if __name__ == "__main__":
    unittest.main()
