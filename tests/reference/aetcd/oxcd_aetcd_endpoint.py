"""A pytest plugin pointing aetcd.Client's default endpoint at the server under test.

aetcd's integration tests pass TEST_ETCD_HTTP_URL's host and port to the clients of their
`client` fixture, but test_auth.py builds `aetcd.Client(username=..., password=...)` with the
library's default localhost:2379. The tests run against a member on a free port (never 2379,
where a system etcd may listen), so the defaults become that member's host and port; explicit
arguments are left as they are. Loaded with `-p oxcd_aetcd_endpoint` from PYTHONPATH.
"""

import functools
import os
import urllib.parse

import aetcd


def pytest_configure(config):
    url = urllib.parse.urlparse(os.environ['TEST_ETCD_HTTP_URL'])
    init = aetcd.Client.__init__

    @functools.wraps(init)
    def init_with_test_endpoint(self, host=url.hostname, port=url.port, *args, **kwargs):
        init(self, host, port, *args, **kwargs)

    aetcd.Client.__init__ = init_with_test_endpoint
