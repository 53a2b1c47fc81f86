"""Storage: segments of RecordBatch v2 bytes with Kafka's sparse indexes."""
