"""A local S3 endpoint for the tests (moto's server on localhost, a real HTTP endpoint): the credentials it takes,
the bucket the ``s3`` fixture (tests/conftest.py) makes, and writing tables into it."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

KEY, SECRET, REGION = "testing", "testing", "us-east-1"
BUCKET = "pools"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


def put_table(client, df: pd.DataFrame, key: str, row_group_size: int = 50) -> None:
    """``df`` as one Parquet object at ``key`` in the test bucket."""
    buf = io.BytesIO()
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), buf, row_group_size=row_group_size
    )
    client.put_object(Bucket=BUCKET, Key=key, Body=buf.getvalue())


def put_pool(client, df: pd.DataFrame, prefix: str, parts: int = 3) -> None:
    """``df`` as ``parts`` Parquet objects under ``prefix``, with a ``_SUCCESS`` marker (skipped, as on disk)."""
    for j, part in enumerate(np.array_split(np.arange(len(df)), parts)):
        put_table(client, df.iloc[part], f"{prefix}/part-{j}.parquet")
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/_SUCCESS", Body=b"")
