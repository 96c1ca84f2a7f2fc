//! The bytes TFRA stores: hash fields are the key's little-endian bytes, hash values are rows of
//! `dim` little-endian elements with no header.
//!
//! Nothing in Redis records the dtype or dim of a table, so both sides must agree on them; this
//! module only knows how to turn numbers into those bytes and back.

// Two jobs, one file each: `keys` encodes ids as hash fields (KeyDtype, Keys, ByteKeys,
// KeyBuf, FieldBytes) and `values` encodes rows (ValueDtype, Element, Dim, add_rows). The
// items are re-exported here, so their public paths stay `tfra_redis::codec::...`.
mod keys;
mod values;

pub use keys::{ByteKeys, KeyBuf, KeyDtype, Keys};
pub use values::{Dim, Element, MAX_DIM, ValueDtype, add_rows, row_bytes};
pub(crate) use values::{elements_as_bytes_mut, elements_to_le, le_to_native_in_place};

#[cfg(test)]
mod tests {
    use super::*;

    use half::{bf16, f16};
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn f32_row(row: &[f32]) -> Vec<u8> {
        row.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn key_fields() {
        assert_eq!(hex(KeyDtype::I64.field(-1).as_ref()), "ffffffffffffffff");
        assert_eq!(
            hex(KeyDtype::I64.field(0x0102030405060708).as_ref()),
            "0807060504030201"
        );
        assert_eq!(hex(KeyDtype::I32.field(-2).as_ref()), "feffffff");
        assert_eq!(hex(KeyDtype::I32.field(1).as_ref()), "01000000");
        for key in [0i64, 1, -1, i64::MIN, i64::MAX, 695] {
            assert_eq!(
                KeyDtype::I64.decode(KeyDtype::I64.field(key).as_ref()),
                Some(key)
            );
        }
        for key in [0i64, -1, i32::MIN.into(), i32::MAX.into()] {
            assert_eq!(
                KeyDtype::I32.decode(KeyDtype::I32.field(key).as_ref()),
                Some(key)
            );
        }
        assert_eq!(KeyDtype::I32.decode(&[0; 8]), None);
        assert_eq!(KeyDtype::I64.decode(&[0; 4]), None);
    }

    #[test]
    fn string_keys() {
        // The field is the string's raw bytes: no prefix, no length, no terminator.
        let data = b"abc\0x\xc3\xa9";
        let offsets = [0usize, 3, 3, 5, 7];
        let keys = Keys::Bytes(ByteKeys::new(data, &offsets).unwrap());
        assert_eq!(keys.len(), 4);
        let fields: Vec<Vec<u8>> = (0..4)
            .map(|i| keys.field(i, KeyDtype::Str).as_ref().to_vec())
            .collect();
        assert_eq!(
            fields,
            [&b"abc"[..], b"", b"\0x", "é".as_bytes()].map(<[u8]>::to_vec)
        );
        assert_eq!(keys.label(2), "\"\\x00x\"");
        assert_eq!(keys.kind(), "string");
        let window = keys.slice(1, 3);
        assert_eq!(window.len(), 2);
        assert_eq!(window.field(1, KeyDtype::Str).as_ref(), b"\0x");
        assert!(keys.slice(2, 2).is_empty());
        assert!(ByteKeys::new(b"", &[]).unwrap().is_empty());
        assert!(ByteKeys::new(data, &[0, 4, 2]).is_err());
        assert!(ByteKeys::new(data, &[0, 8]).is_err());

        let mut buf = KeyBuf::new(KeyDtype::Str);
        assert!(buf.push_field(KeyDtype::Str, b"k1"));
        buf.extend(keys);
        assert_eq!(buf.len(), 5);
        assert_eq!(
            buf,
            KeyBuf::from_strings([&b"k1"[..], b"abc", b"", b"\0x", "é".as_bytes()])
        );
        assert_eq!(buf.clone().into_ints(), None);

        let mut ints = KeyBuf::new(KeyDtype::I32);
        assert!(ints.push_field(KeyDtype::I32, &(-2i32).to_le_bytes()));
        assert!(!ints.push_field(KeyDtype::I32, &[0; 8]));
        assert_eq!(ints.into_ints(), Some(vec![-2]));
        let int_keys = Keys::from(&[5i64, 6]);
        assert_eq!(
            int_keys.field(1, KeyDtype::I64).as_ref(),
            &6i64.to_le_bytes()
        );
        assert_eq!(int_keys.label(0), "5");
    }

    #[test]
    fn dtype_names() {
        assert_eq!(KeyDtype::parse("int64").unwrap(), KeyDtype::I64);
        assert_eq!(KeyDtype::parse("int32").unwrap().width(), Some(4));
        assert_eq!(KeyDtype::I64.name(), "int64");
        assert_eq!(KeyDtype::parse("string").unwrap(), KeyDtype::Str);
        assert_eq!(KeyDtype::Str.width(), None);
        assert_eq!(KeyDtype::Str.name(), "string");
        assert!(KeyDtype::parse("str").is_err());
        let all = [
            ValueDtype::F32,
            ValueDtype::F64,
            ValueDtype::F16,
            ValueDtype::BF16,
            ValueDtype::I32,
            ValueDtype::I64,
            ValueDtype::I8,
        ];
        let widths: Vec<usize> = all.iter().map(|d| d.width()).collect();
        assert_eq!(widths, [4, 8, 2, 2, 4, 8, 1]);
        for d in all {
            assert_eq!(ValueDtype::parse(d.tf_name()).unwrap(), d);
            assert_eq!(ValueDtype::parse(d.numpy_name()).unwrap(), d);
        }
        assert_eq!(ValueDtype::F16.tf_name(), "half");
        assert_eq!(ValueDtype::F64.numpy_name(), "float64");
        assert!(ValueDtype::parse("bool").is_err());
    }

    #[test]
    fn rows() {
        assert!(Dim::new(0).is_err());
        assert_eq!(Dim::new(MAX_DIM).unwrap().get(), 1 << 26);
        for too_big in [MAX_DIM + 1, 1 << 62, usize::MAX] {
            let message = Dim::new(too_big).unwrap_err().to_string();
            assert!(message.contains(&too_big.to_string()), "{message}");
        }
        assert_eq!(
            row_bytes(ValueDtype::F64, Dim::new(MAX_DIM).unwrap()),
            512 << 20
        );
        assert_eq!(row_bytes(ValueDtype::F32, Dim::new(4).unwrap()), 16);
        assert_eq!(row_bytes(ValueDtype::BF16, Dim::new(3).unwrap()), 6);
        assert_eq!(hex(&f32_row(&[1.0, -2.0])), "0000803f000000c0");
        // The fixture row of key 695: [k, k*0.5, -k, k+0.25].
        assert_eq!(
            hex(&f32_row(&[695.0, 347.5, -695.0, 695.25])),
            "00c02d4400c0ad4300c02dc400d02d44"
        );
    }

    #[test]
    fn add() {
        let mut acc = f32_row(&[1.0, -2.0]);
        add_rows(ValueDtype::F32, &mut acc, &f32_row(&[0.5, 2.0])).unwrap();
        assert_eq!(acc, f32_row(&[1.5, 0.0]));

        let mut acc = 1.25f64.to_le_bytes().to_vec();
        add_rows(ValueDtype::F64, &mut acc, &2.5f64.to_le_bytes()).unwrap();
        assert_eq!(acc, 3.75f64.to_le_bytes());

        let mut acc = f16::from_f32(1.5).to_le_bytes().to_vec();
        add_rows(
            ValueDtype::F16,
            &mut acc,
            &f16::from_f32(0.25).to_le_bytes(),
        )
        .unwrap();
        assert_eq!(acc, f16::from_f32(1.75).to_le_bytes());

        let mut acc = bf16::from_f32(3.0).to_le_bytes().to_vec();
        add_rows(
            ValueDtype::BF16,
            &mut acc,
            &bf16::from_f32(-1.0).to_le_bytes(),
        )
        .unwrap();
        assert_eq!(acc, bf16::from_f32(2.0).to_le_bytes());

        let mut acc = i32::MAX.to_le_bytes().to_vec();
        add_rows(ValueDtype::I32, &mut acc, &1i32.to_le_bytes()).unwrap();
        assert_eq!(acc, i32::MIN.to_le_bytes());

        let mut acc = [5i64, -1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        let delta = [-6i64, 1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        add_rows(ValueDtype::I64, &mut acc, &delta).unwrap();
        assert_eq!(
            acc,
            [-1i64, 0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>()
        );

        let mut acc = vec![127u8, 1];
        add_rows(ValueDtype::I8, &mut acc, &[1, 0xff]).unwrap();
        assert_eq!(acc, [0x80, 0]);

        assert!(add_rows(ValueDtype::F32, &mut [0; 8], &[0; 4]).is_err());
        assert!(add_rows(ValueDtype::F32, &mut [0; 6], &[0; 6]).is_err());
    }
}
