"""Feature caches: a frozen backbone's eval-mode features extracted once per image, heads trained on them."""
from .extract import write_feature_cache
from .provenance import StaleCacheError, backbone_hash, check_fresh, check_sources, config_hash
from .store import DamagedCacheError, FeatureCache, FeatureCacheWriter, read_meta
from .transforms import LoadCachedFeatures, PackCachedSegInputs

__all__ = ['write_feature_cache', 'StaleCacheError', 'DamagedCacheError', 'backbone_hash', 'check_fresh',
           'check_sources', 'config_hash', 'FeatureCache', 'FeatureCacheWriter', 'read_meta', 'LoadCachedFeatures',
           'PackCachedSegInputs']
