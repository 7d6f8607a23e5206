"""atdata writes a local index entry and its shards (Redis + S3), as its users do."""

import json
import sys

import atdata
import numpy as np
import webdataset as wds
from atdata.local import Index, S3DataStore
from numpy.typing import NDArray
from redis import Redis

cfg = json.load(sys.stdin)


@atdata.packable
class UpstreamSample:
    features: NDArray
    label: int
    note: str


paths = []
for shard in range(cfg["shards"]):
    path = f"{cfg['dir']}/upstream-{shard:06d}.tar"
    with wds.writer.TarWriter(path) as sink:
        for i in range(cfg["per_shard"]):
            n = shard * cfg["per_shard"] + i
            sample = UpstreamSample(features=np.full(4, n, np.float32), label=n,
                                    note=f"sample {n}")
            sink.write({**sample.as_wds, "__key__": f"{n:06d}"})
    paths.append(path)

store = S3DataStore(credentials=cfg["credentials"], bucket=cfg["bucket"])
index = Index(redis=Redis.from_url(cfg["redis_url"]), data_store=store)
ref = index.publish_schema(UpstreamSample, version="1.0.0")
pattern = f"{cfg['dir']}/upstream-{{000000..{cfg['shards'] - 1:06d}}}.tar"
entry = index.insert_dataset(atdata.Dataset[UpstreamSample](pattern), name=cfg["name"],
                             metadata={"split": "train", "ratio": 0.25})
print(json.dumps({"schema_ref": ref, "cid": entry.cid, "name": entry.name,
                  "data_urls": list(entry.data_urls), "metadata": entry.metadata},
                 default=str))
