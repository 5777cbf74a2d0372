def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; run on the device machine with -m gpu")
