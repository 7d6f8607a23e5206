"""atdata reads what atdata_async published: the dataset and schema records, the sample
type rebuilt from the schema record, the samples decoded from the shards; and a local
index entry atdata_async inserted."""

import json
import sys

import atdata
from atdata.atmosphere import AtmosphereClient, AtmosphereIndex, DatasetLoader
from atdata.local import Index
from redis import Redis

cfg = json.load(sys.stdin)
out = {}
client = AtmosphereClient(base_url=cfg["pds_url"])  # reading needs no login
index = AtmosphereIndex(client)
for uri in cfg["uris"]:
    entry = index.get_dataset(uri)
    schema = index.get_schema(entry.schema_ref)
    sample_type = index.decode_schema(entry.schema_ref)
    loader = DatasetLoader(client)
    info = loader.get_s3_info(uri)
    source = atdata.S3Source(bucket=info["bucket"], keys=info["keys"],
                             endpoint=info["endpoint"], region=info["region"],
                             access_key=cfg["access_key"], secret_key=cfg["secret_key"])
    samples = list(atdata.Dataset[sample_type](source).ordered())
    first = samples[0]
    out[uri] = {
        "name": entry.name, "schema_ref": entry.schema_ref, "data_urls": entry.data_urls,
        "schema_name": schema.get("name"), "schema_type": schema.get("schemaType"),
        "type_name": sample_type.__name__,
        "fields": sorted(sample_type.__dataclass_fields__),
        "count": len(samples), "labels": [s.label for s in samples],
        "features_dtype": str(first.features.dtype), "features_shape": list(
            first.features.shape), "features_first": first.features.tolist(),
        "metadata": loader.get_metadata(uri), "endpoint": info["endpoint"],
        "checksums": [s["checksum"] for s in loader.get(uri)["storage"]["shards"]],
    }
if cfg.get("local_name"):
    local = Index(redis=Redis.from_url(cfg["redis_url"]))
    entry = local.get_entry_by_name(cfg["local_name"])
    out["local"] = {"name": entry.name, "cid": entry.cid, "data_urls": list(entry.data_urls),
                    "schema_ref": entry.schema_ref,
                    "schema_name": local.get_schema(entry.schema_ref).get("name")}
print(json.dumps(out, default=str))
