"""Tools for trying the provider without an account or a cloud: never imported by the runtime.

- :class:`~airflow_bettertoken.testing.emulator.EmulatorServer`: a local stand-in for BetterToken's API.
- :class:`~airflow_bettertoken.testing.sandbox.LocalSandbox`: the emulator and moto's S3 on loopback,
  with the Airflow connections that reach them.
- :func:`~airflow_bettertoken.testing.samples.sample_image`: small generated reference images.

They need the ``testing`` extra: ``pip install "airflow-bettertoken[testing]"``.
"""
